################################################################################
#
# mailslot
#
################################################################################

# The source is the repository this external tree lives in (image/buildroot/../..).
MAILSLOT_VERSION = custom
MAILSLOT_SITE = $(BR2_EXTERNAL_MAILSLOT_PATH)/../..
MAILSLOT_SITE_METHOD = local
MAILSLOT_LICENSE = Apache-2.0
MAILSLOT_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude target --exclude fuzz --exclude image --exclude .git

# The device build: no edge, no YAML (see Cargo.toml's features).
MAILSLOT_CARGO_BUILD_OPTS = --no-default-features --bin mailslot
# The release profile is tuned for speed (the edge); a board's binary for size.
MAILSLOT_CARGO_ENV = SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) CARGO_PROFILE_RELEASE_OPT_LEVEL=z

MAILSLOT_OVERLAY = $(BR2_EXTERNAL_MAILSLOT_PATH)/../overlay

# A local source is rsynced, not downloaded, so the cargo-package download step
# never vendors its crates: fetch them into Buildroot's cargo home (in DL_DIR) here;
# the build itself then runs --offline.
define MAILSLOT_CARGO_FETCH
	cd $(@D) && $(TARGET_MAKE_ENV) $(PKG_CARGO_ENV) \
		cargo fetch --locked --manifest-path Cargo.toml \
			--target $(RUSTC_TARGET_NAME)
endef
MAILSLOT_POST_RSYNC_HOOKS += MAILSLOT_CARGO_FETCH

define MAILSLOT_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 \
		$(@D)/target/$(RUSTC_TARGET_NAME)/$(if $(BR2_ENABLE_DEBUG),debug,release)/mailslot \
		$(TARGET_DIR)/usr/bin/mailslot
	$(INSTALL) -d -m 0700 $(TARGET_DIR)/etc/mailslot
endef

define MAILSLOT_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(MAILSLOT_OVERLAY)/etc/init.d/S95mailslot \
		$(TARGET_DIR)/etc/init.d/S95mailslot
endef

define MAILSLOT_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(MAILSLOT_OVERLAY)/usr/lib/systemd/system/mailslot.service \
		$(TARGET_DIR)/usr/lib/systemd/system/mailslot.service
	$(INSTALL) -D -m 0644 $(MAILSLOT_OVERLAY)/usr/lib/sysusers.d/mailslot.conf \
		$(TARGET_DIR)/usr/lib/sysusers.d/mailslot.conf
endef

# user uid group gid password home shell groups comment
define MAILSLOT_USERS
	mailslot -1 mailslot -1 * /etc/mailslot - - mailslot tunnel connector
endef

# path type mode uid gid major minor start inc count
define MAILSLOT_PERMISSIONS
	/etc/mailslot d 0700 mailslot mailslot - - - - -
endef

$(eval $(cargo-package))
