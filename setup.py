"""Only what pyproject.toml cannot say: the top-level configs/ folder is installed as the package
``vidtldr_pl.configs`` (its YAML files are package data, listed in pyproject.toml), so that ``--config name.yaml``
finds them from any directory and from a non-editable install (vidtldr_pl.cli.config_dir)."""
from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["vidtldr_pl*", "data_modules*"]), "vidtldr_pl.configs",
              "vidtldr_pl.configs.strategies"],
    package_dir={"vidtldr_pl.configs": "configs"},
)
