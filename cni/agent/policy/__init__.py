"""NetworkPolicy (networking.k8s.io/v1) for the pods of this node, enforced by nftables sets in
the kernel: objects (API JSON -> values), compile (values -> sets and rules, pure), render (-> one
nft transaction), enforce (the agent's I/O). The plugin's half is cni/firewall/policy.py."""
