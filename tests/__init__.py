"""Tests of the Ansible side: filters, modules, roles (a package: its conftest
must not shadow server/tests/conftest.py)."""
