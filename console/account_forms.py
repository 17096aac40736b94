"""Forms of the account pages (sign-in, sign-up, password, two-factor). They only shape input; the rules live in
accounts and organizations."""

from django import forms

from controlplane.validators import no_control_characters


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
    """No password here: it is chosen on the page the emailed link opens (SignupConfirmForm), by whoever holds the
    address."""

    email = forms.EmailField(max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    full_name = forms.CharField(max_length=150, required=False, validators=[no_control_characters])
    organization_name = forms.CharField(
        max_length=100, required=False, help_text="You can rename it later.", validators=[no_control_characters]
    )


class SignupConfirmForm(forms.Form):
    password = forms.CharField(
        label="Choose a password",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        max_length=128,
        strip=False,
    )


class PasswordForm(forms.Form):
    """Re-authentication before a sensitive change."""

    password = forms.CharField(
        label="Your password", widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}), strip=False
    )


class PasswordResetForm(forms.Form):
    """The address to send a reset link to. The page answers the same whatever the address; the task behind it
    reaches active accounts, including those that never had a password (created by an operator)."""

    email = forms.EmailField(label="Email", max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email"}))
