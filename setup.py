"""MediaProxy: far-end NAT traversal media relay for SIP."""

import re

from setuptools import find_packages, setup

with open("mediaproxy/__init__.py") as stream:
    VERSION = re.search(r'__version__ = "([^"]+)"', stream.read()).group(1)

setup(
    name="mediaproxy",
    version=VERSION,
    description="Far-end NAT traversal media relay for SIP: dispatcher and media relays (MediaProxy 2.x compatible)",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="GPL-2.0-or-later",
    python_requires=">=3.11",
    packages=find_packages(include=["mediaproxy", "mediaproxy.*"]),
    # the live sessions page ([Dispatcher] web_listen)
    package_data={"mediaproxy.web": ["static/*.html", "static/*.css", "static/*.js"]},
    scripts=["media-dispatcher", "media-relay"],
    entry_points={
        "console_scripts": [
            "mediaproxy-gen-certs = mediaproxy.net.certgen:main",
            "mediaproxy-demo = mediaproxy.demo.run:main",
            "media-sessions = mediaproxy.cli.sessions:main",
        ],
    },
    install_requires=[
        # the tls extra: twisted.internet.ssl needs service_identity (Debian's python3-twisted depends on it)
        "twisted[tls]>=22.4",
        "pyOpenSSL>=23.0",
        "cryptography>=38",
        "zope.interface>=5",
        # checks a dispatcher's certificate against its DNS name ([Relay] verify_dispatcher_name)
        "service_identity>=18.1",
        "SQLObject>=3.10",
        "pyrad>=2.1",
        "pyroute2>=0.7.2",
        # [Dispatcher] metrics_listen (Debian bookworm: 0.16)
        "prometheus-client>=0.16",
    ],
    extras_require={
        "mysql": ["PyMySQL>=1.0"],
        "postgresql": ["psycopg2-binary>=2.9"],
    },
    data_files=[("share/mediaproxy", ["config.ini.sample"])],
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: Communications :: Internet Phone",
        "Framework :: Twisted",
    ],
)
