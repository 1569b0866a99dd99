"""Start-up steps both programs share before their own service is built."""

from __future__ import annotations

import sys

from mediaproxy import configuration
from mediaproxy.net import tls
from mediaproxy.runtime import process
from mediaproxy.runtime.log import LogControl


def prepare(program: str, description: str, argv: list[str] | None, role: str, level_of, extra=None, needs_tls=None):
    """Parse the command line, load config.ini and TLS files; exit 78 (EX_CONFIG) with one line on failure.

    ``needs_tls(options)`` may say that this run does without the TLS files (credentials None).
    """
    options = process.parse_arguments(program, description, argv, extra)
    try:
        config = process.load_configuration(options)
        credentials = tls.load_credentials(config, role) if needs_tls is None or needs_tls(options) else None
    except (configuration.ConfigurationError, tls.TLSConfigurationError) as error:
        sys.exit(process.fail(program, str(error), process.EXIT_CONFIG))
    log_control = LogControl("DEBUG" if options.debug else level_of(config))
    return options, config, credentials, log_control
