"""The block-data model and its live state; alerting comes later."""
