"""`pycni agent`: the node agent of a Kubernetes cluster networked by pycni (kind's kindnet is the
pattern). Per node: installs the plugin, writes the conflist from the node's spec.podCIDRs, routes
every other node's pod CIDRs via that node's InternalIP, masquerades traffic leaving the cluster.

    nodes.py  pure: Node objects (the API's JSON) -> NodeInfo -> desired conflist, routes, pod nets
    host.py   applies a desired state on this node: conflist, routes (netlink), masquerade (nft)
    watch.py  the Kubernetes API (official client, imported only here): list + watch nodes
    main.py   the `pycni agent` command

Nothing in this package is imported on the plugin's per-pod path.
"""
