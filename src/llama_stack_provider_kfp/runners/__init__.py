"""Runners execute the one pipeline definition: `local` (kfp.local) today."""
