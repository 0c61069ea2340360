//! The TEXT + CHECK columns as the domain's enums, at the Diesel boundary.
//!
//! Each enum is read with `FromSql<Text, Pg>` (through its `FromStr`) and
//! written with `ToSql<Text, Pg>` / `AsExpression<Text>` (through its
//! `as_str`), so a row struct can hold `AdminState` instead of a `String`
//! and a DSL filter can say `s::admin_state.eq(AdminState::Maint)`.
//! A stored value the enum does not know is a deserialization error that
//! names the column it came from; it never becomes a default.
//! The enums stay free of Diesel in `domain/`; the impls live here.

use diesel::deserialize::{self, FromSql, Queryable};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{Nullable, Text};

use crate::domain::action::{ActionStatus, FailureCode, SyncReason, SyncStatus};
use crate::domain::breaker::BreakerState;
use crate::domain::{AdminState, HistorySource, OpState};

/// Implements the Diesel traits of a text column for `$ty`, whose values
/// live in the columns `$columns` (named in the error for an unknown value).
macro_rules! text_enum {
    ($ty:ty, $columns:literal) => {
        impl FromSql<Text, Pg> for $ty {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
                text.parse::<$ty>()
                    .map_err(|e| format!("{}: {e}", $columns).into())
            }
        }

        impl Queryable<Text, Pg> for $ty {
            type Row = Self;
            fn build(row: Self) -> deserialize::Result<Self> {
                Ok(row)
            }
        }

        impl ToSql<Text, Pg> for $ty {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                <str as ToSql<Text, Pg>>::to_sql(self.as_str(), out)
            }
        }

        impl AsExpression<Text> for $ty {
            type Expression = <&'static str as AsExpression<Text>>::Expression;
            fn as_expression(self) -> Self::Expression {
                <&'static str as AsExpression<Text>>::as_expression(self.as_str())
            }
        }

        impl AsExpression<Text> for &$ty {
            type Expression = <&'static str as AsExpression<Text>>::Expression;
            fn as_expression(self) -> Self::Expression {
                <&'static str as AsExpression<Text>>::as_expression(self.as_str())
            }
        }

        impl AsExpression<Nullable<Text>> for $ty {
            type Expression = <&'static str as AsExpression<Nullable<Text>>>::Expression;
            fn as_expression(self) -> Self::Expression {
                <&'static str as AsExpression<Nullable<Text>>>::as_expression(self.as_str())
            }
        }

        impl AsExpression<Nullable<Text>> for &$ty {
            type Expression = <&'static str as AsExpression<Nullable<Text>>>::Expression;
            fn as_expression(self) -> Self::Expression {
                <&'static str as AsExpression<Nullable<Text>>>::as_expression(self.as_str())
            }
        }
    };
}

text_enum!(
    AdminState,
    "haproxy_servers.admin_state, haproxy_actions.action, haproxy_batches.action or a history admin state"
);
text_enum!(OpState, "haproxy_servers.op_state or a history op state");
text_enum!(BreakerState, "haproxy_instances.breaker_state");
text_enum!(ActionStatus, "haproxy_actions.status");
text_enum!(crate::domain::action::BatchStatus, "haproxy_batches.status");
text_enum!(FailureCode, "haproxy_actions.error");
text_enum!(HistorySource, "haproxy_server_status_history.source");
text_enum!(SyncReason, "haproxy_sync_runs.reason");
text_enum!(
    SyncStatus,
    "haproxy_sync_runs.status or haproxy_instances.last_sync_result"
);
text_enum!(
    crate::domain::rollout::RolloutStatus,
    "haproxy_rollouts.status"
);
text_enum!(
    crate::domain::approval::ApprovalStatus,
    "haproxy_approvals.status"
);
text_enum!(
    crate::domain::approval::ApprovalKind,
    "haproxy_approvals.kind"
);
text_enum!(
    crate::domain::rollout::Step,
    "haproxy_rollout_servers.step or failed_step"
);
