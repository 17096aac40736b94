"""Provider adapters for VPC peering, one module per cloud behind providers.base.PeeringAdapter.

`adapter_for` imports the vendor SDK only when a peering of that provider is worked on.
"""

from __future__ import annotations

import importlib

from networking.providers.base import PeeringAdapter

_MODULES = {"aws": "networking.providers.aws", "gcp": "networking.providers.gcp", "azure": "networking.providers.azure"}


def adapter_for(provider: str) -> PeeringAdapter:
    try:
        module = _MODULES[provider]
    except KeyError:
        raise ValueError(f"no VPC peering adapter for provider {provider!r}") from None
    return importlib.import_module(module).ADAPTER
