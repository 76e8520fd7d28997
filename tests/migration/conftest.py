"""The migration tier reuses the integration tier's throwaway node namespaces."""

from tests.integration.conftest import _no_stale_namespaces, node  # noqa: F401  (fixtures)
