"""Start-up steps both programs share before their own service is built."""

from __future__ import annotations

import sys

from mediaproxy import configuration, process, tls
from mediaproxy.log import LogControl


def prepare(program: str, description: str, argv: list[str] | None, role: str, level_of):  # noqa: ANN001, ANN201
    """Parse the command line, load config.ini and TLS files; exit 78 (EX_CONFIG) with one line on failure."""
    options = process.parse_arguments(program, description, argv)
    try:
        config = process.load_configuration(options)
        credentials = tls.load_credentials(config, role)
    except (configuration.ConfigurationError, tls.TLSConfigurationError) as error:
        sys.exit(process.fail(program, str(error), process.EXIT_CONFIG))
    log_control = LogControl("DEBUG" if options.debug else level_of(config))
    return options, config, credentials, log_control
