//! The storage primary key every sealed object lives under.
//!
//! The TPM's persistent SRK at 0x81000001 when it has one; otherwise a
//! transient primary made from the template of `tpm2_createprimary -C o -g
//! sha256 -G ecc256:aes128cfb -a` [`NODA_ATTRIBUTES`], so that tpm2-tools
//! alone can re-create the same key (the TPM derives it from its owner seed)
//! and recover the root key.
//!
//! The primary is `noDA`, as a provisioned SRK is: a TPM in
//! dictionary-attack lockout (after wrong PINs) still loads objects under
//! it, so a lockout stops only the PIN-protected copy of the root key, never
//! the PCR-bound copy or the rollback counter. Versions before 0.14 used
//! the template without `noda` ([`Template::Legacy`]); their blobs are
//! migrated at start (`rootkey::layout`).

use tss_esapi::Context;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::handles::{KeyHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::structures::{
    EccPoint, EccScheme, KeyDerivationFunctionScheme, Public, PublicBuilder,
    PublicEccParametersBuilder, SymmetricDefinitionObject,
};

/// The conventional handle of a persistent storage root key (TCG provisioning guidance).
pub const PERSISTENT_SRK: u32 = 0x8100_0001;

/// The `-a` attributes of the noDA transient primary, as tpm2-tools spells them.
pub const NODA_ATTRIBUTES: &str =
    "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt";

/// Which transient primary to create when the TPM has no persistent SRK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// The noDA template every blob is sealed under now.
    NoDa,
    /// The tpm2-tools default template (not noDA) of versions before 0.14,
    /// only to migrate their blobs.
    Legacy,
}

/// Which storage primary to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoragePrimary {
    /// The persistent SRK when the TPM has one, else the transient primary
    /// of this template: what new objects are sealed under.
    Preferred(Template),
    /// The transient primary of this template, even when an SRK exists
    /// (one provisioned after the objects were sealed, as
    /// systemd-tpm2-setup does at boot).
    Transient(Template),
    /// The persistent SRK, which must exist.
    PersistentSrk,
}

/// A loaded storage primary key.
#[derive(Debug, Clone, Copy)]
pub struct Primary {
    /// Its handle in this ESAPI context.
    pub handle: KeyHandle,
    /// True for the persistent SRK at [`PERSISTENT_SRK`].
    pub persistent: bool,
}

/// The public template of `tpm2_createprimary -C o -g sha256 -G ecc256:aes128cfb`
/// (tpm2-tools 5.x): NIST P-256 restricted decryption key, name algorithm
/// SHA-256, attributes fixedtpm|fixedparent|sensitivedataorigin|userwithauth|
/// restricted|decrypt, AES-128-CFB, null scheme and KDF, empty unique.
pub fn tpm2_tools_ecc_template() -> tss_esapi::Result<Public> {
    ecc_template(false)
}

/// [`tpm2_tools_ecc_template`] with `noda` added: the template of
/// `tpm2_createprimary -C o -g sha256 -G ecc256:aes128cfb -a` [`NODA_ATTRIBUTES`].
pub fn noda_ecc_template() -> tss_esapi::Result<Public> {
    ecc_template(true)
}

fn ecc_template(no_da: bool) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_no_da(no_da)
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    let parameters = PublicEccParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::AES_128_CFB)
        .with_ecc_scheme(EccScheme::Null)
        .with_curve(EccCurve::NistP256)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_is_decryption_key(true)
        .with_restricted(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// Loads the storage primary `choice` names: the persistent SRK, or the
/// transient primary created under the owner hierarchy.
pub fn load(context: &mut Context, choice: StoragePrimary) -> tss_esapi::Result<Primary> {
    let template = match choice {
        StoragePrimary::Preferred(template) | StoragePrimary::Transient(template) => template,
        StoragePrimary::PersistentSrk => Template::NoDa,
    };
    if choice != StoragePrimary::Transient(template) {
        let srk = PersistentTpmHandle::new(PERSISTENT_SRK).map(TpmHandle::Persistent)?;
        // Reading the handle's public area fails when nothing is persisted there.
        let persisted = context.execute_without_session(|ctx| ctx.tr_from_tpm_public(srk));
        match persisted {
            Ok(handle) => {
                return Ok(Primary {
                    handle: KeyHandle::from(handle),
                    persistent: true,
                });
            }
            Err(e) if choice == StoragePrimary::PersistentSrk => return Err(e),
            Err(_) => {}
        }
    }
    let template = match template {
        Template::NoDa => noda_ecc_template()?,
        Template::Legacy => tpm2_tools_ecc_template()?,
    };
    let created = context.execute_with_nullauth_session(|ctx| {
        ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
    })?;
    Ok(Primary {
        handle: created.key_handle,
        persistent: false,
    })
}
