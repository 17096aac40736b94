"""Tests of the Helm chart in helm/controlplane."""
