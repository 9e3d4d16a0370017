"""lsched's shipped deployment profiles, installed as the package ``lsched_models``.

The TOML files in this folder are the profiles; ``pyproject.toml`` maps the folder to
the package ``lsched_models`` so that a wheel carries them, and
:mod:`lsched._models` finds them there. Nothing here is imported by lsched.
"""
