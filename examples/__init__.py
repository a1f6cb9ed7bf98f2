"""dact_tf examples."""
