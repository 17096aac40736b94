"""Deployment API routes, mounted under /api/v1/ by controlplane.urls."""
urlpatterns: list = []
