"""The web console (`genstack console`): watch, submit and inspect jobs in a browser."""
