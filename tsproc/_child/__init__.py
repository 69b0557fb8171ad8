"""Child processes: what runs outside Python, and the files they keep.

``process`` runs a child under trio (fork with a parent-death signal, pidfd reaping, a capped
log, terminate); ``helper`` finds the helper binary (in ``tsproc/_bin``) and spawns it with its
end of the channel's socketpair; ``statedir`` is a node's state directory and its lock. Nothing
here knows the protocol or the node.
"""
