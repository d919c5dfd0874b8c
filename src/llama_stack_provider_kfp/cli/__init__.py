"""`llama-stack-kfp`: the post-training command line, a client of any llama-stack 0.6.x server.

It talks to the server only through llama-stack-client (an import contract keeps it away from
the provider's server side), so it works against this provider and any other.
"""
