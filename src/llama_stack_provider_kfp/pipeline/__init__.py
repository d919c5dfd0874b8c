"""The one pipeline definition and its component bodies (KFP types stop here)."""
