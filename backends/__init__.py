"""Backends: each turns a lowered integer graph into something that runs."""
