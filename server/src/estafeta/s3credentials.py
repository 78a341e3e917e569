"""S3 credentials files, for backups (``[backup] s3_credentials_file``) and a
cluster's object store (``[store.objects] credentials_file``).

The file holds ``access_key_id = ...`` and ``secret_access_key = ...``
lines (AWS's ``aws_`` spellings too; an INI section header is allowed) and
must not be readable by others (0600 or 0640).
"""

from __future__ import annotations

import configparser
import os
import stat
from pathlib import Path


def read_credentials(path: Path) -> tuple[str, str]:
    """(access key id, secret); ValueError says what is wrong with the file."""
    try:
        info = os.stat(path)
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ValueError(f"{path}: cannot read the S3 credentials: {reason}") from None
    if info.st_mode & stat.S_IRWXO:
        raise ValueError(f"{path}: the S3 credentials are readable by others; chmod 600 it")
    parser = configparser.ConfigParser(interpolation=None)  # a secret may hold "%"
    try:
        parser.read_string(text if text.lstrip().startswith("[") else "[s3]\n" + text)
    except configparser.Error as exc:
        raise ValueError(f"{path}: not a credentials file: {exc.message}") from None
    for section in parser.sections():
        values = parser[section]
        key = values.get("access_key_id") or values.get("aws_access_key_id")
        secret = values.get("secret_access_key") or values.get("aws_secret_access_key")
        if key and secret:
            return key.strip(), secret.strip()
    raise ValueError(f"{path}: needs access_key_id and secret_access_key")
