"""What every front end shares: the jobs of a provider config and the one submit path."""
