"""The sign-out view the console and the admin share: Django's LogoutView, with the sign-out audited. Nothing here
decides who may sign in."""

from django.contrib.auth.views import LogoutView
from django.db import transaction

from accounts import signin


class SignOutView(LogoutView):
    """Ends the session as Django's LogoutView does (POST only, CSRF-checked), and records `logout` for the user it
    had signed in, in the same transaction as the session's deletion: no sign-out without its audit event, and no
    event for a sign-out that did not happen. A session that signed in nobody (or only half: a second factor still
    owed) ends without an event."""

    def post(self, request, *args, **kwargs):
        with transaction.atomic():
            if request.user.is_authenticated:
                signin.signout(user=request.user)
            return super().post(request, *args, **kwargs)
