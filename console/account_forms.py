"""Forms of the account pages (sign-in, sign-up, password, two-factor). They only shape input; the rules live in
accounts and organizations."""

from django import forms
from django.contrib.auth.forms import PasswordResetForm as DjangoPasswordResetForm

from accounts.models import User


class SignInForm(forms.Form):
    username = forms.EmailField(label="Email", max_length=254)
    password = forms.CharField(label="Password", widget=forms.PasswordInput, max_length=4096, strip=False)


class CodeForm(forms.Form):
    code = forms.CharField(
        label="Code from your authenticator app, or a recovery code",
        max_length=32,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "text", "autofocus": True}),
    )


class SignupForm(forms.Form):
    email = forms.EmailField(max_length=254)
    full_name = forms.CharField(max_length=150, required=False)
    organization_name = forms.CharField(max_length=100, required=False, help_text="You can rename it later.")
    password = forms.CharField(widget=forms.PasswordInput, max_length=128, strip=False)


class PasswordForm(forms.Form):
    """Re-authentication before a sensitive change."""

    password = forms.CharField(
        label="Your password", widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}), strip=False
    )


class PasswordResetForm(DjangoPasswordResetForm):
    """Django's, but it also reaches active accounts that never had a password (created by an operator or an
    invitation with the password to be set by reset). The page answers the same whatever the address."""

    def get_users(self, email):
        return User.objects.filter(email__iexact=email, is_active=True)
