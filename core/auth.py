"""Transitional: the names that lived here, now in core.permissions, core.passwords,
core.login and core.users. Removed once the last importer has moved (this session)."""

from core.login import *  # noqa: F403
from core.login import AccountLocked, AuthenticationFailed, LoginLimits, authenticate  # noqa: F401
from core.permissions import *  # noqa: F403
from core.permissions import SYSTEM, AuthError, PermissionDenied, Principal, require  # noqa: F401
from core.users import *  # noqa: F403
from core.users import UserError, create_user, ensure_admin, get_user, principal_for  # noqa: F401
