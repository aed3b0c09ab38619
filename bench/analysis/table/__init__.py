"""`python -m bench table`: records -> frame (frame) -> the protocol's selection (protocol) ->
Markdown / LaTeX / CSV (render); the command itself is command.py."""
