"""Joins the edge nodes' and the Premium trials' migrations, made side by side; neither touches the other's tables."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("iot", "0002_edge"), ("iot", "0002_trials")]
    operations = []
