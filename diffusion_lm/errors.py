"""Every error the project raises on purpose, in one place: the bottom layer, imported by all.

`UserError` is bad input (a config value, a path, a file, a checkpoint that does not fit); its
message is one line naming the problem and the fix, and the binaries (cli.run) print it and exit 2
instead of a traceback. The other two are failures of a run, not of its input (exit 3 and 1).

Example:
  >>> raise ConfigError("--config.model.d_model=0 is out of range; it must be >= 1")
"""


class UserError(Exception):
  """Bad input from the user: a config value, a path, a checkpoint that does not fit."""


class ConfigError(UserError):
  """A config field has an invalid value."""


class CheckpointError(UserError):
  """A checkpoint is missing, corrupt, or does not match the model being built."""


class DataError(UserError, ValueError):
  """A dataset is misconfigured or its files are unreadable; the message says what to fix."""


class UnencodableTextError(UserError, ValueError):
  """Text contains words the tokenizer maps to unk (raised by `Tokenizer.encode_strict`)."""


class TrainingDivergedError(Exception):
  """The loss, gradients or parameters became NaN/Inf; the message names the step and quantity.

  Not a UserError: binaries exit with status 3 for it (2 stays "bad input").
  """


class CheckpointWriteError(Exception):
  """A checkpoint could not be written (e.g. the disk is full); the older ones are intact.

  Not a UserError: the run itself failed, so binaries exit with status 1 and this one line.
  """
