"""`pycni agent`: the node agent of a Kubernetes cluster networked by pycni (kind's kindnet is the
pattern). Per node: installs the plugin, writes the conflist from the node's spec.podCIDRs, routes
every other node's pod CIDRs via that node's InternalIP (on-link) or its VXLAN tunnel (behind a
router), masquerades traffic leaving the cluster.

    nodes.py  pure: Node objects (the API's JSON) -> NodeInfo -> desired conflist, routes, pod nets
    tunnel.py pure: per peer pod CIDR a direct route (on-link), VXLAN (behind a router) or
              unreachable; the pods' MTU
    tunnel_host.py  the kernel's facts for tunnel.py (routes to the peers, MTUs); the VXLAN device,
              its FDB and neighbour entries; the peers' record; the VTEP MAC annotation
    host.py   applies a desired state on this node: conflist, routes (netlink), masquerade (nft)
    watch.py  the Kubernetes API (official client, imported only here and, for the annotation, in
              tunnel_host): list + watch nodes
    main.py   the `pycni agent` command

Nothing in this package is imported on the plugin's per-pod path.
"""
