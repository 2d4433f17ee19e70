"""Thin HTTP routers, one per resource: decode, authenticate, call the service, encode."""
