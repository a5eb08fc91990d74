"""The one exception type that means "bad input": the CLI turns it into exit code 2.

Each message is a single line that says where (file:line, iteration.field or CSV row) and what.
Anything else that escapes is a bug or an environment failure and exits 1.
"""


class InputError(Exception):
    """Bad input (ledger, data, arguments). `lines` holds one formatted line per problem."""

    def __init__(self, lines):
        if isinstance(lines, str):
            lines = [lines]
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))
