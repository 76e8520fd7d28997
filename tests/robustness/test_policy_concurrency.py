"""NetworkPolicy's plugin and agent halves racing (see policy_driver.py): a pod is isolated from
the moment its ADD returns and leaves no verdict behind after its DEL, while the agent replaces
the table as fast as it can."""

from tests.integration.conftest import node  # noqa: F401  (fixture)

from .conftest import profile, run_driver


def test_pods_are_never_open_after_add_nor_left_after_del_while_the_agent_syncs(node):  # noqa: F811
    run_driver(node, "policy_driver", profile(8, 32), "policy concurrency",
               "--ops", str(profile(60, 600)), "--dir", str(node.tmp))
