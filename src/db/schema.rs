//! Diesel schema, written by hand to match `migrations/` exactly.
//!
//! `db::tests::schema_matches_migrations` compares every table here with the database the
//! migrations produce (column names, nullability and types), so the two cannot drift apart.

// AC's tables. On AC's database they have more columns; only those the module uses are listed.

diesel::table! {
    servers (id) {
        id -> Int8,
        hostname -> Text,
        ip -> Nullable<Text>,
        is_haproxy_node -> Bool,
    }
}

diesel::table! {
    applications (id) {
        id -> Int8,
        name -> Text,
        server_id -> Nullable<Int8>,
        port -> Nullable<Int4>,
        instance -> Nullable<Text>,
    }
}

diesel::table! {
    application_groups (id) {
        id -> Int8,
        name -> Text,
    }
}

diesel::table! {
    application_group_members (group_id, application_id) {
        group_id -> Int8,
        application_id -> Int8,
    }
}

// The module's tables.

diesel::table! {
    haproxy_instances (id) {
        id -> Int8,
        server_id -> Nullable<Int8>,
        name -> Text,
        fagent_url -> Text,
        /// `env:VAR`, `file:/path` or `token:literal`.
        fagent_token_ref -> Text,
        is_active -> Bool,
        /// `closed`, `open` or `half_open`.
        breaker_state -> Text,
        consecutive_failures -> Int4,
        opened_at -> Nullable<Timestamptz>,
        probe_started_at -> Nullable<Timestamptz>,
        last_sync_at -> Nullable<Timestamptz>,
        last_sync_result -> Nullable<Text>,
        last_sync_error -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        /// `Pid` of the HAProxy process the last sync saw.
        haproxy_pid -> Nullable<Int4>,
        /// That process's start (`Start_time_sec`, the HAProxy host's clock; identity only).
        haproxy_started_at -> Nullable<Timestamptz>,
        /// When a sync last saw a new HAProxy process (the database's clock).
        last_reload_at -> Nullable<Timestamptz>,
        /// Re-apply module-applied states that a reload reset.
        restore_after_reload -> Bool,
    }
}

diesel::table! {
    haproxy_backends (id) {
        id -> Int8,
        haproxy_id -> Int8,
        backend_name -> Text,
        created_at -> Timestamptz,
        last_seen_at -> Nullable<Timestamptz>,
        removed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    haproxy_servers (id) {
        id -> Int8,
        backend_id -> Int8,
        server_name -> Text,
        address -> Text,
        port -> Nullable<Int4>,
        /// `ready`, `drain` or `maint`.
        admin_state -> Text,
        /// `up`, `down`, `no_check`, `stopping` or `starting`.
        op_state -> Text,
        weight -> Int4,
        current_sessions -> Int8,
        check_status -> Nullable<Text>,
        application_id -> Nullable<Int8>,
        created_at -> Timestamptz,
        last_seen_at -> Nullable<Timestamptz>,
        removed_at -> Nullable<Timestamptz>,
        state_changed_at -> Nullable<Timestamptz>,
        /// When an action or a sync last wrote the state; an older sync snapshot must not
        /// overwrite it.
        state_written_at -> Nullable<Timestamptz>,
        /// `requested_at` of the newest action applied to this server.
        last_requested_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    haproxy_batches (id) {
        id -> Int8,
        transaction_id -> Uuid,
        /// `ready`, `drain` or `maint`.
        action -> Text,
        actor -> Text,
        reason -> Nullable<Text>,
        force -> Bool,
        targets -> Jsonb,
        total -> Int4,
        requested_at -> Timestamptz,
        created_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
        /// Times the sweeper took the batch up.
        sweeps -> Int4,
        swept_at -> Nullable<Timestamptz>,
        /// `awaiting_approval`, `accepted` or `rejected` (by its approval).
        status -> Text,
        /// Why it was rejected (names the approval).
        status_detail -> Nullable<Text>,
    }
}

diesel::table! {
    haproxy_actions (id) {
        id -> Int8,
        transaction_id -> Uuid,
        server_id -> Nullable<Int8>,
        batch_id -> Nullable<Int8>,
        /// `ready`, `drain` or `maint`.
        action -> Text,
        /// `awaiting_approval`, `pending`, `running`, `success`, `failed`, `superseded` or `rejected`.
        status -> Text,
        actor -> Text,
        reason -> Nullable<Text>,
        force -> Bool,
        requested_at -> Timestamptz,
        attempts -> Int4,
        /// An error code such as `agent_unreachable`.
        error -> Nullable<Text>,
        error_detail -> Nullable<Text>,
        /// The final events, re-published verbatim on duplicates.
        events -> Jsonb,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        /// Times the sweeper re-published the action's command.
        sweeps -> Int4,
        swept_at -> Nullable<Timestamptz>,
        /// The rollout that made this action, if any.
        rollout_id -> Nullable<Int8>,
    }
}

diesel::table! {
    haproxy_server_status_history (id) {
        id -> Int8,
        server_id -> Int8,
        previous_admin_state -> Nullable<Text>,
        new_admin_state -> Text,
        previous_op_state -> Nullable<Text>,
        new_op_state -> Text,
        /// `action` or `sync`.
        source -> Text,
        actor -> Text,
        action_id -> Nullable<Int8>,
        changed_at -> Timestamptz,
    }
}

diesel::table! {
    haproxy_application_links (id) {
        id -> Int8,
        haproxy_id -> Int8,
        address -> Text,
        port -> Int4,
        server_name -> Text,
        application_id -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    haproxy_sync_runs (id) {
        id -> Int8,
        transaction_id -> Uuid,
        instance_id -> Int8,
        /// `schedule` or `force`.
        reason -> Text,
        actor -> Text,
        /// `running`, `success`, `failed` or `skipped`.
        status -> Text,
        error -> Nullable<Text>,
        counts -> Jsonb,
        events -> Jsonb,
        requested_at -> Timestamptz,
        started_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    /// Items the sweeper took up, by kind.
    haproxy_sweeps (kind) {
        kind -> Text,
        count -> Int8,
        last_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    haproxy_rollouts (id) {
        id -> Int8,
        transaction_id -> Uuid,
        actor -> Text,
        reason -> Nullable<Text>,
        /// `awaiting_approval`, `running`, `paused`, `halted`, `aborting`, `aborted`,
        /// `completed` or `rejected`.
        status -> Text,
        spec -> Jsonb,
        total -> Int4,
        waves -> Int4,
        current_wave -> Int4,
        wave_done_at -> Nullable<Timestamptz>,
        tick_seq -> Int8,
        halted_reason -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    haproxy_rollout_servers (id) {
        id -> Int8,
        rollout_id -> Int8,
        server_id -> Int8,
        backend_id -> Int8,
        wave -> Int4,
        position -> Int4,
        /// `pending` … `ready`, `failed` or `skipped`.
        step -> Text,
        failed_step -> Nullable<Text>,
        attempt -> Int4,
        step_started_at -> Nullable<Timestamptz>,
        healthy_since -> Nullable<Timestamptz>,
        hook_runs -> Int4,
        hook_started_at -> Nullable<Timestamptz>,
        hook_finished_at -> Nullable<Timestamptz>,
        hook_exit_code -> Nullable<Int4>,
        hook_output -> Nullable<Text>,
        error -> Nullable<Text>,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    haproxy_webhook_endpoints (id) {
        id -> Int8,
        url -> Text,
        events -> Array<Text>,
        description -> Nullable<Text>,
        active -> Bool,
        secret -> Text,
        previous_secret -> Nullable<Text>,
        previous_secret_until -> Nullable<Timestamptz>,
        disabled_at -> Nullable<Timestamptz>,
        disabled_reason -> Nullable<Text>,
        disabled_notified -> Bool,
        failing_since -> Nullable<Timestamptz>,
        created_by -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    haproxy_webhook_callbacks (transaction_id) {
        transaction_id -> Uuid,
        /// `action`, `batch` or `rollout`.
        kind -> Text,
        url -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    haproxy_webhook_events (event_id) {
        event_id -> Uuid,
        event_type -> Text,
        body -> Text,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    haproxy_webhook_deliveries (id) {
        id -> Int8,
        event_id -> Uuid,
        endpoint_id -> Nullable<Int8>,
        callback_url -> Nullable<Text>,
        event_type -> Text,
        /// `pending`, `delivered` or `failed`.
        status -> Text,
        attempts -> Int4,
        schedule_from -> Int4,
        next_attempt_at -> Timestamptz,
        claimed_by -> Nullable<Uuid>,
        last_status_code -> Nullable<Int4>,
        last_error -> Nullable<Text>,
        last_duration_ms -> Nullable<Int4>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        delivered_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    haproxy_webhook_attempts (id) {
        id -> Int8,
        delivery_id -> Int8,
        attempt -> Int4,
        attempted_at -> Timestamptz,
        status_code -> Nullable<Int4>,
        duration_ms -> Int4,
        error -> Nullable<Text>,
        next_attempt_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(applications -> servers (server_id));
diesel::joinable!(application_group_members -> application_groups (group_id));
diesel::joinable!(application_group_members -> applications (application_id));
diesel::joinable!(haproxy_instances -> servers (server_id));
diesel::joinable!(haproxy_backends -> haproxy_instances (haproxy_id));
diesel::joinable!(haproxy_servers -> haproxy_backends (backend_id));
diesel::joinable!(haproxy_servers -> applications (application_id));
diesel::table! {
    haproxy_settings (name) {
        name -> Text,
        value -> Jsonb,
        updated_by -> Text,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    haproxy_approvals (id) {
        id -> Int8,
        /// `action`, `batch` or `rollout`.
        kind -> Text,
        transaction_id -> Uuid,
        /// `pending`, `approved`, `rejected` or `expired`.
        status -> Text,
        requester -> Text,
        summary -> Jsonb,
        matched_rules -> Jsonb,
        requested_at -> Timestamptz,
        expires_at -> Timestamptz,
        decided_by -> Nullable<Text>,
        decided_at -> Nullable<Timestamptz>,
        comment -> Nullable<Text>,
    }
}

diesel::joinable!(haproxy_actions -> haproxy_servers (server_id));
diesel::joinable!(haproxy_actions -> haproxy_batches (batch_id));
diesel::joinable!(haproxy_server_status_history -> haproxy_servers (server_id));
diesel::joinable!(haproxy_server_status_history -> haproxy_actions (action_id));
diesel::joinable!(haproxy_application_links -> haproxy_instances (haproxy_id));
diesel::joinable!(haproxy_application_links -> applications (application_id));
diesel::joinable!(haproxy_sync_runs -> haproxy_instances (instance_id));
diesel::joinable!(haproxy_rollout_servers -> haproxy_rollouts (rollout_id));
diesel::joinable!(haproxy_rollout_servers -> haproxy_servers (server_id));
diesel::joinable!(haproxy_actions -> haproxy_rollouts (rollout_id));
diesel::joinable!(haproxy_webhook_deliveries -> haproxy_webhook_events (event_id));
diesel::joinable!(haproxy_webhook_deliveries -> haproxy_webhook_endpoints (endpoint_id));
diesel::joinable!(haproxy_webhook_attempts -> haproxy_webhook_deliveries (delivery_id));

diesel::allow_tables_to_appear_in_same_query!(
    servers,
    applications,
    application_groups,
    application_group_members,
    haproxy_instances,
    haproxy_backends,
    haproxy_servers,
    haproxy_batches,
    haproxy_actions,
    haproxy_server_status_history,
    haproxy_application_links,
    haproxy_sync_runs,
    haproxy_sweeps,
    haproxy_rollouts,
    haproxy_rollout_servers,
    haproxy_settings,
    haproxy_approvals,
    haproxy_webhook_endpoints,
    haproxy_webhook_callbacks,
    haproxy_webhook_events,
    haproxy_webhook_deliveries,
    haproxy_webhook_attempts,
);
