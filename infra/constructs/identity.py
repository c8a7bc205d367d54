"""Cognito user pool and the app client the `tessera` CLI logs in with."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cognito as cognito
from constructs import Construct

from infra.config import StageConfig
from infra.nag import acknowledge


class Identity(Construct):
    """`user_pool` (email sign-in, no self sign-up, Plus tier threat protection) and `client`."""

    def __init__(self, scope: Construct, id: str, *, config: StageConfig) -> None:
        super().__init__(scope, id)
        self.user_pool = cognito.UserPool(
            self,
            "Users",
            user_pool_name=f"{config.prefix}-users",
            self_sign_up_enabled=False,  # operators create users (`tessera local adduser`)
            sign_in_aliases=cognito.SignInAliases(email=True),
            auto_verify=cognito.AutoVerifiedAttrs(email=True),
            standard_attributes=cognito.StandardAttributes(
                email=cognito.StandardAttribute(required=True, mutable=True)
            ),
            # The API takes the caller's email from the token (it is how shares find
            # people): a new address must be verified before it replaces the old one, or a
            # user could claim someone else's address, and their shares, before its owner
            # signs in.
            keep_original=cognito.KeepOriginalAttrs(email=True),
            password_policy=cognito.PasswordPolicy(
                min_length=12,
                require_lowercase=True,
                require_uppercase=True,
                require_digits=True,
                require_symbols=True,
                temp_password_validity=Duration.days(3),
            ),
            mfa=cognito.Mfa.OPTIONAL,
            mfa_second_factor=cognito.MfaSecondFactor(otp=True, sms=False),
            account_recovery=cognito.AccountRecovery.EMAIL_ONLY,
            feature_plan=cognito.FeaturePlan.PLUS,
            standard_threat_protection_mode=cognito.StandardThreatProtectionMode.FULL_FUNCTION,
            deletion_protection=config.is_prod,
            removal_policy=RemovalPolicy.RETAIN if config.is_prod else RemovalPolicy.DESTROY,
        )
        acknowledge(
            self.user_pool,
            "AwsSolutions-COG2",
            "MFA is OPTIONAL (TOTP): the tessera CLI signs in by password (the token endpoint) and "
            "has no MFA challenge step yet; Plus-tier threat protection blocks risky sign-ins",
        )
        self.client = self.user_pool.add_client(
            "Cli",
            user_pool_client_name=f"{config.prefix}-cli",
            generate_secret=False,  # a public client: the CLI cannot keep a secret
            # admin: the token endpoint's (it passes the caller's address on to threat
            # protection); password and SRP: any other Cognito client's
            auth_flows=cognito.AuthFlow(
                admin_user_password=True, user_password=True, user_srp=True
            ),
            prevent_user_existence_errors=True,
            access_token_validity=Duration.hours(1),
            id_token_validity=Duration.hours(1),
            refresh_token_validity=Duration.days(30),
            enable_token_revocation=True,
            write_attributes=cognito.ClientAttributes(),  # the CLI changes no attribute
        )
