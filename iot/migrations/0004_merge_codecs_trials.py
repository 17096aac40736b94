"""Joins the codecs line of migrations with the edge-and-trials line; no schema change."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("iot", "0003_merge_codecs_edge"),
        ("iot", "0003_merge_edge_trials"),
    ]

    operations = []
