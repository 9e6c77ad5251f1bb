"""The one error every part of the config package raises."""
from pgt_train.errors import UserError


class ConfigError(UserError):
    """A recipe or override the user must fix; the CLI prints it as one line and exits 2."""
