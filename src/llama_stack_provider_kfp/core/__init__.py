"""Pure code shared by every tier: no llama-stack, KFP or torch import here."""
