//! How to reach the TPM: the TCTI string as tpm2-tools and tpm2-tss spell
//! it, checked strictly before tss-esapi sees it. It lives with the TPM
//! code, the lowest layer, so that nothing there depends on the config.

use std::fmt;
use std::str::FromStr;

use tss_esapi::tcti_ldr::TctiNameConf;

/// How to reach the TPM: a TCTI string as tpm2-tools and tpm2-tss spell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcti {
    text: String,
    conf: TctiNameConf,
}

impl Tcti {
    /// The TCTI configuration tss-esapi opens.
    pub fn name_conf(&self) -> TctiNameConf {
        self.conf.clone()
    }

    /// The string, as tpm2-tools' `-T` takes it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Tcti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const TCTI_HELP: &str = "use \"device:/dev/tpmrm0\" (the kernel's resource manager), \
     \"swtpm:host=127.0.0.1,port=2321\" (a software TPM), \
     \"mssim:host=127.0.0.1,port=2321\" or \"tabrmd:\"";

impl FromStr for Tcti {
    type Err = String;

    /// Accepts `device:PATH`, `swtpm:host=H,port=P`, `mssim:host=H,port=P` and
    /// `tabrmd:[OPTIONS]`, and refuses anything tss-esapi would silently
    /// misread (unknown options, a bad port, a relative device path).
    fn from_str(text: &str) -> Result<Tcti, String> {
        let (kind, args) = text.split_once(':').unwrap_or((text, ""));
        match kind {
            "device" => {
                if !args.starts_with('/') {
                    return Err(format!(
                        "\"{text}\": a device TCTI needs an absolute path, e.g. \"device:/dev/tpmrm0\""
                    ));
                }
            }
            "swtpm" | "mssim" => {
                for option in args.split(',').filter(|o| !o.is_empty()) {
                    match option.split_once('=') {
                        Some(("host", host)) if !host.is_empty() => {}
                        Some(("port", port)) if port.parse::<u16>().is_ok_and(|p| p > 0) => {}
                        Some(("port", port)) => {
                            return Err(format!(
                                "\"{text}\": port \"{port}\" is not a TCP port (1 to 65535)"
                            ));
                        }
                        _ => {
                            return Err(format!(
                                "\"{text}\": unknown option \"{option}\"; {kind} takes host=ADDRESS and port=NUMBER, e.g. \"{kind}:host=127.0.0.1,port=2321\""
                            ));
                        }
                    }
                }
            }
            "tabrmd" => {}
            _ => {
                return Err(format!(
                    "\"{text}\" is not a TCTI this daemon supports; {TCTI_HELP}"
                ));
            }
        }
        let conf = TctiNameConf::from_str(text)
            .map_err(|e| format!("\"{text}\" is not a valid TCTI ({e}); {TCTI_HELP}"))?;
        Ok(Tcti {
            text: text.to_string(),
            conf,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misreadable_tctis_are_refused_and_usable_ones_accepted() {
        for bad in [
            "swtpm:host=127.0.0.1,prot=2321",
            "swtpm:port=99999",
            "device:dev/tpm0",
            "device",
            "usb:/dev/tpm0",
        ] {
            assert!(Tcti::from_str(bad).is_err(), "{bad} must be refused");
        }
        for good in [
            "device:/dev/tpmrm0",
            "swtpm:host=127.0.0.1,port=2321",
            "swtpm:",
            "mssim:port=1",
            "tabrmd:",
        ] {
            let tcti = Tcti::from_str(good).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(tcti.as_str(), good);
            assert_eq!(tcti.to_string(), good);
        }
    }

    #[test]
    fn a_refusal_names_the_string_and_the_fix() {
        let err = Tcti::from_str("usb:/dev/tpm0").unwrap_err();
        assert!(err.contains("\"usb:/dev/tpm0\""), "{err}");
        assert!(err.contains("device:/dev/tpmrm0"), "{err}");
        let err = Tcti::from_str("swtpm:prot=1").unwrap_err();
        assert!(err.contains("host=ADDRESS and port=NUMBER"), "{err}");
    }
}
