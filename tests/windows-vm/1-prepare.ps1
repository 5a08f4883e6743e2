# Step 1: enable test signing and make a test code-signing certificate. Reboots when needed.
# Usage (elevated): .\1-prepare.ps1            then, after the reboot, run it again.
. "$PSScriptRoot\common.ps1"
Assert-Admin

$bcd = bcdedit /enum '{current}' | Out-String
if ($bcd -notmatch 'testsigning\s+Yes') {
    # Secure Boot forbids test signing ("The value is protected by Secure Boot policy": Learn,
    # "The TESTSIGNING boot configuration option"); without this check the step rebooted for
    # ever. On Hyper-V: Set-VMFirmware -VMName <vm> -EnableSecureBoot Off.
    $secureBoot = try { Confirm-SecureBootUEFI } catch { $false }
    if ($secureBoot) { throw 'Secure Boot is on: turn it off in the VM firmware settings, then run this again.' }
    $set = Invoke-Native { bcdedit /set testsigning on }
    if ($set.Code -ne 0) { throw "bcdedit /set testsigning on failed ($($set.Code)): $($set.Text)" }
    Set-KitState 'testsigning-pending-reboot'
    Write-Host 'Test signing enabled: reboot, then run .\1-prepare.ps1 again.'
    Restart-Computer -Confirm
    return
}

$subject = 'CN=hivetrack test signing'
$cert = Get-ChildItem Cert:\LocalMachine\My | Where-Object Subject -eq $subject | Select-Object -First 1
if (-not $cert) {
    $cert = New-SelfSignedCertificate -Type CodeSigningCert -Subject $subject `
        -CertStoreLocation Cert:\LocalMachine\My -HashAlgorithm SHA256 -NotAfter (Get-Date).AddYears(1)
}
foreach ($store in 'Root', 'TrustedPublisher') {
    $dst = New-Object Security.Cryptography.X509Certificates.X509Store($store, 'LocalMachine')
    $dst.Open('ReadWrite'); $dst.Add($cert); $dst.Close()
}
Set-KitState 'prepared'
Write-Host "Test signing is on and '$subject' is trusted. Next: .\2-install.ps1"
