"""Typed clients, one module per service, each a thin ServiceClient subclass."""
