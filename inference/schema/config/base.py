"""What every config section shares: the strict base model, the error type, names and constants."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

DEFAULT_MODEL = "packaged:smollm2-135m-instruct"
API_KEYS_ENV = "SLOSERVE_API_KEYS"  # the variable the default Kubernetes Secret fills (kubernetes.secrets)


class ConfigError(ValueError):
    """A configuration file is missing, not YAML, or invalid; the message names the field."""


class StrictModel(BaseModel):
    """Every config section: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
