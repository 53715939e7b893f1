"""Bytes to text: tf.string values (numpy bytes once read) and file contents as Python str.

The one place the library and the task registrations (tasks/) turn string values into text: the
run modes for prediction rows and input files, tasks/ for postprocessors and metrics. A leaf:
it imports nothing, so any level may use it.
"""


def as_text(value, errors: str = "replace") -> str:
  """`value` as text: bytes (numpy.bytes_ included) decoded as UTF-8, anything else str().

  Args:
    value: bytes (a tf.string element read as numpy, a file's contents), str, or any value
      str() accepts (numbers, labels).
    errors: what undecodable bytes become ("replace": U+FFFD; "strict": UnicodeDecodeError).

  Returns:
    The text; a str is returned unchanged.
  """
  return value.decode("utf-8", errors=errors) if isinstance(value, bytes) else str(value)
