"""Only what pyproject.toml cannot say: two top-level folders of the repository are installed inside the package, so
that an installed vidtldr-pl puts one name, ``vidtldr_pl``, into site-packages:

- ``configs/`` as ``vidtldr_pl.configs`` (its YAML files are package data, listed in pyproject.toml), so that
  ``--config name.yaml`` finds them from any directory and from a non-editable install (vidtldr_pl.cli_help.config_dir);
- ``data_modules/`` as ``vidtldr_pl.data_modules`` (the LightningDataModules; configs name them
  ``vidtldr_pl.data_modules.<module>.<Class>``)."""
from setuptools import find_namespace_packages, setup

data_modules = ["vidtldr_pl.data_modules" + name[len("data_modules"):]
                for name in find_namespace_packages(include=["data_modules", "data_modules.*"])]
setup(
    packages=[*find_namespace_packages(include=["vidtldr_pl*"]), *data_modules, "vidtldr_pl.configs",
              "vidtldr_pl.configs.strategies"],
    package_dir={"vidtldr_pl.configs": "configs", "vidtldr_pl.data_modules": "data_modules"},
)
