"""Least-privilege Redis: one ACL user per service (``users``), rendered as ACL
file lines (``rules``), and the files compose runs with (``deploy``).
``python -m shared.acl --help`` lists the commands."""
