"""Pure code shared by every tier: no I/O (boundary/ does that) and no llama-stack, KFP or
torch import."""
