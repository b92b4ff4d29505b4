"""The HTTP API (`clara api`): a thin shell over core, like the pages and the CLI.

Routes call the same core functions with the caller as the acting user, so permissions and
the audit log are exactly those of the other shells. Built by `build_app` (api.app) so tests
and `clara api` serve the same application.
"""
