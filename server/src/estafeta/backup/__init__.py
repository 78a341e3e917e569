"""Backups (issue 18): encrypted, content-addressed snapshots of data_dir.

``objects``: keys, the keyring and sealed objects (what the destination holds).
"""
