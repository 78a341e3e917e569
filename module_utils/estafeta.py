"""Driving the estafeta command line from modules (``library/estafeta_*.py``).

The modules run on the mail host, where estafeta lives in its own virtualenv
(``/opt/estafeta`` by default). The Python that runs a module is not that
one, so modules never import estafeta: they run its CLI and read its
``--json`` output. When a command fails, the CLI has already said on stderr
what is wrong and how to fix it; ``EstafetaCLI.run`` turns that into
``fail_json(msg=...)``.

Passwords go to the CLI on standard input (``--password-stdin``), never on
its command line, so they show in no process list and no error message.

Import from a module as ``from ansible.module_utils.estafeta import ...``
(``module_utils = module_utils`` in ansible.cfg).
"""

from __future__ import annotations

import json
import os

DEFAULT_EXECUTABLE = "/opt/estafeta/bin/estafeta"
DEFAULT_CONFIG = "/etc/estafeta/estafeta.toml"

# Exit codes of the CLI (estafeta.cli): 0 success, 1 the operation failed
# (for `user verify`: the password does not match), 2 bad usage or configuration.
EXIT_OK = 0
EXIT_FAILED = 1


def estafeta_argument_spec():
    """The options every estafeta module has (each module documents them: ansible-doc
    reads DOCUMENTATION as a literal, so it cannot be assembled here)."""
    return {
        "config": {"type": "path", "default": DEFAULT_CONFIG},
        "executable": {"type": "path", "default": DEFAULT_EXECUTABLE},
    }


class EstafetaCLI:
    """``estafeta -c CONFIG ...`` for one module run.

    Every method that fails calls ``module.fail_json``, so callers only
    handle success.
    """

    def __init__(self, module, hint=""):
        """``hint`` ends the message when the executable is missing (say where
        the module must run)."""
        self.module = module
        self.executable = module.params["executable"]
        self.config = module.params["config"]
        if os.sep not in self.executable:  # a bare name: look it up in PATH
            self.executable = module.get_bin_path(self.executable) or self.executable
        if not (os.path.isfile(self.executable) and os.access(self.executable, os.X_OK)):
            module.fail_json(
                msg=f"estafeta executable {self.executable} not found or not executable: "
                "install estafeta there, or set the executable option to its estafeta command"
                + (f"; {hint}" if hint else "")
            )

    # -- running commands ------------------------------------------------------

    def run(self, *args, stdin=None, ok=(EXIT_OK,)):
        """Run one command; returns ``(rc, stdout, stderr)``.

        ``stdin`` (a password) is written to the command's standard input,
        followed by a newline. An exit code not in ``ok`` fails the module
        with the CLI's own message.
        """
        command = [self.executable, "-c", self.config, *args]
        # Addresses may hold "$" and "~" (atext): no expansion of variables or homes.
        rc, out, err = self.module.run_command(
            command, data=stdin, check_rc=False, expand_user_and_vars=False
        )
        if rc not in ok:
            self.fail(args, rc, out, err)
        return rc, out, err

    def fail(self, args, rc, out, err):
        reason = (err or out).strip() or f"exit code {rc}"
        if reason.startswith("estafeta: "):
            reason = reason[len("estafeta: ") :]
        self.module.fail_json(
            msg=f"estafeta {' '.join(args)}: {reason}",
            rc=rc,
            stdout=out,
            stderr=err,
            cmd=[self.executable, "-c", self.config, *args],
        )

    def json(self, *args):
        """Run a ``--json`` command and return its decoded output."""
        _, out, _ = self.run(*args)
        try:
            return json.loads(out)
        except ValueError:
            self.module.fail_json(
                msg=f"estafeta {' '.join(args)}: the output is not JSON; is {self.executable} "
                "older than these modules?",
                stdout=out,
            )

    # -- what the modules ask ------------------------------------------------------

    def normalize(self, addresses, local=False):
        """The canonical forms (as stored) of addresses and ``@domain`` catch-alls.

        With ``local``, each must also be in a configured domain. A bad one
        fails the module with the CLI's reason.
        """
        args = ["normalize", "--json", *(["--local"] if local else []), "--", *addresses]
        return self.json(*args)

    def users(self):
        """``{address: quota}`` of every account; quota 0 means the global quota."""
        return {entry["address"]: entry["quota"] for entry in self.json("user", "list", "--json")}

    def aliases(self):
        """``{source: [target, ...]}`` of every alias."""
        return self.json("alias", "list", "--json")

    def password_matches(self, address, password):
        """Whether ``password`` is the account's, asked without printing anything."""
        args = ("user", "verify", "--password-stdin", "--", address)
        rc, out, err = self.run(*args, stdin=password, ok=(EXIT_OK, EXIT_FAILED))
        if rc == EXIT_FAILED and err.strip():
            # "No match" is a silent 1; a 1 with a message is an error.
            self.fail(args, rc, out, err)
        return rc == EXIT_OK

    def dkim_keys(self, domain):
        """The keys of one domain: ``[{"domain", "selector", "algorithm", "txt"}]``."""
        return self.json("dkim", "list", "--json", "--", domain)
