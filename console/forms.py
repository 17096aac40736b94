"""Console forms. Validation of business rules stays in the services; forms only shape input."""

from django import forms

from organizations.roles import Role


class InvitationAcceptForm(forms.Form):
    full_name = forms.CharField(max_length=150, required=False)
    password = forms.CharField(widget=forms.PasswordInput, max_length=128, required=False)


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100)
    role = forms.ChoiceField(choices=Role.choices)
    projects = forms.MultipleChoiceField(required=False, help_text="Leave empty for the whole organization.")
    expires_at = forms.DateTimeField(required=False, help_text="Optional, e.g. 2027-01-31 00:00")

    def __init__(self, *args, project_choices=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["projects"].choices = project_choices
