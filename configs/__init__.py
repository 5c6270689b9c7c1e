"""The shipped configs: this folder is installed as the package ``vidtldr_pl.configs`` (setup.py), so that
``--config msrvtt_umt.yaml`` finds its files from any directory (vidtldr_pl.cli.config_dir)."""
