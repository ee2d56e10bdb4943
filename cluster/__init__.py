"""Several agents as one ([cluster] in config.toml): membership, work sharing and leadership
through Redis, a local buffer for a node that is cut off.

The agent asks this package two questions: "which of these units of work are mine this cycle?"
(`ClusterNode.claim`) and "am I the leader?" (`ClusterNode.leading`). Nothing else in the agent
knows Redis. Without [cluster] nothing here is imported.
"""
