# Codecs and edge nodes were made side by side, each as the iot app's 0002: this joins the two histories.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("iot", "0002_codecs"),
        ("iot", "0002_edge"),
    ]

    operations = []
